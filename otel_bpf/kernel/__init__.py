"""The kernel boundary: the only code that makes syscalls, holds fds or reads procfs."""
