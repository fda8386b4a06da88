"""The stages: each composes data -> operator -> prior -> guidance -> solver -> outputs."""
