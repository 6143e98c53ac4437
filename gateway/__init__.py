"""tokengate gateway."""
