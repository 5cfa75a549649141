"""Using a trained model: export it (ONNX, TorchScript, model card; :mod:`.export`), score files with it
(:mod:`.predict`), and pretrain encoders on the proxy set (:mod:`.pretrain`). docs/model.md says how."""
