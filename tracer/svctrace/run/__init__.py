"""`svctrace run`'s edge: the marker pipe, the command as the invoking user, private run folders."""
