"""Ship plane: the candidate as served: ONNX export, engine conversion (ONNX Runtime | TensorRT), serving."""
