"""Fine-tuning: trainable/frozen split, optimizer, jitted sharded step."""


class TrainingError(RuntimeError):
    """A run stopped on what it trained on (images that failed, non-finite steps); the message names the cause and
    the intact checkpoint."""
