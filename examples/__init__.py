"""Examples of services behind tokengate; not part of the ``tokengate`` distribution."""
