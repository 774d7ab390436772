"""Everything that touches TenSEAL/SEAL bytes lives in this package; nothing outside it imports tenseal."""
