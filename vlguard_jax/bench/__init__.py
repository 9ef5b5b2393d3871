"""`vlguard-jax bench`: throughput and MFU of our train step, decode and input pipeline, measured side by side
with transformers + PEFT on the same device in the same run."""
