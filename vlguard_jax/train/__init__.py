"""Fine-tuning: trainable/frozen split, optimizer, jitted sharded step."""
