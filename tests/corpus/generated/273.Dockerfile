ARG BASE=scratch
FROM $