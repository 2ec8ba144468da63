"""The downstream protocol (CoCLR's, fixed): linear probe, fine-tuning loop, features, retrieval, reports."""
