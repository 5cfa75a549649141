"""``python -m mirror_app.bench``: ``make bench`` (:mod:`.run`)."""

from mirror_app.bench.run import main

if __name__ == "__main__":
    raise SystemExit(main())
