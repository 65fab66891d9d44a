"""Tensor parallelism: the model split Megatron-style over ranks joined by torch.distributed."""
