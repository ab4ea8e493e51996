"""Inference-aware targets: streamed LLM endpoints, in-process PyTorch models, gRPC unary."""
