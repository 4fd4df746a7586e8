"""edgeguard."""
