"""Running a model: runtimes (PyTorch, ONNX Runtime, OpenVINO) with one call (`runtime`),
ONNX export of a network (`onnx_export`), the backend choice with its export cache
(`backends`) and the precision choice with its bf16 parity gate (`precision`), classical
heads at inference (`heads`), and `ImageClassifier` (`classifier`)."""
