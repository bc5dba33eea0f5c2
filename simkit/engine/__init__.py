"""What HAPPENS over time: SimPy processes, shared links, memory pools, replicas."""
