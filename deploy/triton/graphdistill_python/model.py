"""Triton Python-backend model: the champion's ONNX serving graph (model.onnx beside this file's
version folder) run with ONNX Runtime. Runs inside Triton's own venv (.venv-triton, numpy<2)."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # Triton batches; one thread per instance keeps latency flat
        self.session = ort.InferenceSession(os.path.join(version_dir, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            # Triton needs a non-batch dim ([batch, 1]); the graph takes [batch].
            user_idx = pb_utils.get_input_tensor_by_name(request, "user_idx").as_numpy().reshape(-1)
            outputs = self.session.run(self.output_names, {self.input_name: user_idx.astype(np.int64)})
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, value) for name, value in zip(self.output_names, outputs)]))
        return responses
