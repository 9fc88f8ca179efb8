"""The places signed checkpoints are sent to (the interface is services/checkpoint_sink.py)."""
