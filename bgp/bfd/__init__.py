"""BFD (RFC 5880/5881): fast failure detection for the BGP sessions of this node."""
