"""Text for people: names made safe for a terminal, byte sizes."""
