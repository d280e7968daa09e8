"""The training engine: HF Accelerate for devices, precision and processes; a short loop you can read."""
