"""What the app costs: Flower and Ray overhead, start-up, memory, preprocessing and a deployed round
(``python -m mirror_app.bench``), the paper's setting (:mod:`.paper`) and thousands of SuperNodes (:mod:`.scale`)."""
