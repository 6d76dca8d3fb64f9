// Entry point placeholder.
print("backstop")
