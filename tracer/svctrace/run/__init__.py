"""`svctrace run`: the command's process, the marker pipe, the event pump, the terminal."""
