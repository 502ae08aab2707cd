"""Running a model: runtimes (PyTorch, ONNX Runtime) with one call (`runtime`), ONNX export
of a network (`onnx_export`) and the backend choice with its export cache (`backends`),
classical heads at inference (`heads`), and `ImageClassifier` (`classifier`)."""
