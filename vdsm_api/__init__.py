"""The vdsm API schema: the one declaration of every verb, its parameters and its errors."""
