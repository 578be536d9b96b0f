FROM scratch AS base
