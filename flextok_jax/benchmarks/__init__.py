"""Inference and training benchmarks: ``python -m flextok_jax.benchmarks {tokenize,detokenize,train,all}``."""
