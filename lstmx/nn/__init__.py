"""The network: cells, layers (forward beside backward), the stack, the models, generation."""
