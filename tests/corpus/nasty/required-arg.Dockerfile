FROM ${NOPE:?is required}
