"""Diagnostics that explain why an ablation matters: lesions, gradient flow, CKA."""
