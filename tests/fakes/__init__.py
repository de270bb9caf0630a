"""Stand-ins for real components, each for the faults the real one cannot be made to produce."""
