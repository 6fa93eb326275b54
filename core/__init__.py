"""The ground floor: config loading, storage, tracking, redaction, errors, the Ray session and the
entry-point helper. Imports no other package of this project; every other package may import it."""
