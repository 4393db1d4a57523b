"""The project's base layer: small pure helpers that bgp, confgen and routes all use; imports none of them."""
