"""Deployment: BN folding, the inference backends, the parity check with fp32, export and benchmark."""
