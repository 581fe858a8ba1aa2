"""verify: a real load of an adapter on its base, and the certificate that proves it."""
