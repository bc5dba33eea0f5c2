"""How long things TAKE: pure functions from shapes to FLOPs, bytes and seconds. No simulation state."""
