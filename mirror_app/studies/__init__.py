"""The comparison and the studies that explain it: Table 1 (:mod:`.sweep`), the ablations (:mod:`.ablations`,
with :mod:`.readings`, :mod:`.security`, :mod:`.missingness`, :mod:`.distill`), centralised calibration
(:mod:`.centralized`); how their cells run and what records they keep (:mod:`.runs`). docs/results/ holds what
they measured."""
