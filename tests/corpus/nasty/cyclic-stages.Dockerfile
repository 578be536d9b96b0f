FROM b AS a
FROM a AS b
