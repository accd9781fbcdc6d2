terraform {
  # Pinned to the versions the platform runs (see /work/shared/STACK.md); 1.0.x has variable
  # validation but no preconditions, so cross-variable checks live in main.tf locals.
  required_version = ">= 1.0.3"

  required_providers {
    vsphere = {
      source  = "hashicorp/vsphere"
      version = "2.0.2"
    }
  }
}
