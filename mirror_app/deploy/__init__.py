"""Running the apps for real: a private SuperLink, SuperNodes and Ray nodes (:mod:`.launch`), the checks before
Flower starts (:mod:`.preflight`), ``make deploy-local`` (:mod:`.local`) and certificates (:mod:`.certs`).
docs/deployment.md says how."""
