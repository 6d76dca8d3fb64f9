// Placeholder; replaced by the listeners.
