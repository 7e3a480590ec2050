"""What the server ships to hosts it reaches over SSH (fleet hosts, Slurm nodes): the agent, as one file."""
