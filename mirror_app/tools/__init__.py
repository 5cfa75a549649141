"""Tools around the Flower apps: benchmark, sweep, ablations, local deployment, certificates,
centralised calibration and encoder pretraining."""
