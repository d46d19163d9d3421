"""Files in and out: reading inputs, writing outputs atomically, and the formats beside them."""
