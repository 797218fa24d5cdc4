"""space: the architecture search space, the model builder, the seed baseline and its modifications."""
