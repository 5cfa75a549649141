"""The ML core: run config, backbones, the dual encoder, parameter groups, training and evaluation.

Plain PyTorch; nothing here imports Flower, the strategies or the clients."""
