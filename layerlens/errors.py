class LayerLensError(ValueError):
    """Bad input: the message is one line naming the field, file or constraint at fault."""
