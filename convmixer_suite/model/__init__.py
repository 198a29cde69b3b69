"""The model: ConvMixer's architecture and its released variants (``net``)."""
