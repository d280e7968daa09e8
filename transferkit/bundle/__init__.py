"""Bundles: a folder of safetensors weights + JSON that rebuilds a trained model without pickle."""
