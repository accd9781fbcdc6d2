# --- vCenter connection --------------------------------------------------------------------------

variable "vsphere_server" {
  description = "vCenter address (host or host:port)."
  type        = string
}

variable "vsphere_user" {
  description = "vCenter user name (from Vault: kept out of plans and logs like the password)."
  type        = string
  sensitive   = true
}

variable "vsphere_password" {
  description = "vCenter password. Pass it through TF_VAR_vsphere_password, never on the command line."
  type        = string
  sensitive   = true
}

variable "allow_unverified_ssl" {
  description = "Accept a self-signed vCenter certificate (sandbox only)."
  type        = bool
  default     = false
}

# --- Placement -----------------------------------------------------------------------------------

variable "datacenter" {
  description = "Datacenter name."
  type        = string
}

variable "cluster" {
  description = "Cluster whose root resource pool receives the VMs. Set exactly one of cluster or host."
  type        = string
  default     = ""
}

variable "host" {
  description = "Standalone ESXi host whose resource pool receives the VMs. Set exactly one of cluster or host."
  type        = string
  default     = ""
}

variable "datastore" {
  description = "Datastore name."
  type        = string
}

variable "network" {
  description = "Port group the VM's single NIC connects to."
  type        = string
}

variable "folder" {
  description = "VM folder, relative to the datacenter's VM folder (e.g. \"umc\")."
  type        = string
}

variable "template" {
  description = "Template VM, inventory path relative to the datacenter's VM folder (e.g. \"templates/umc-linux-template\"); with content_library, the name of an item in that library."
  type        = string
}

# --- Templates from a content library ------------------------------------------------------------
# vSphere cannot read a library item's hardware before the deploy, as it reads a template VM's: the library_*
# values say it, and must match the item (otherwise the VMs are changed to them after the deploy: the guest id on
# the next run, the firmware, SCSI controller and NIC type at once, which can keep the guest from booting).

variable "content_library" {
  description = "A content library by name: template then names an OVF or VM template item in it. \"\": template is a template VM."
  type        = string
  default     = ""
}

variable "library_guest_id" {
  description = "With content_library: the item's guest id (e.g. \"rhel9_64Guest\"); \"\": other3xLinux64Guest, or windows9Server64Guest for guest_os = windows."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9_-]{1,80})?$", var.library_guest_id))
    error_message = "The library_guest_id value must be empty or a vSphere guest id such as rhel9_64Guest."
  }
}

variable "library_firmware" {
  description = "With content_library: the item's firmware, \"bios\" or \"efi\"."
  type        = string
  default     = "bios"

  validation {
    condition     = contains(["bios", "efi"], var.library_firmware)
    error_message = "The library_firmware value must be \"bios\" or \"efi\"."
  }
}

variable "library_scsi_type" {
  description = "With content_library: the item's SCSI controller, \"pvscsi\" or \"lsilogic\" or \"lsilogic-sas\"."
  type        = string
  default     = "pvscsi"

  validation {
    condition     = contains(["pvscsi", "lsilogic", "lsilogic-sas"], var.library_scsi_type)
    error_message = "The library_scsi_type value must be \"pvscsi\", \"lsilogic\" or \"lsilogic-sas\"."
  }
}

variable "library_nic_type" {
  description = "With content_library: the item's network adapter type, \"vmxnet3\", \"e1000e\" or \"e1000\"."
  type        = string
  default     = "vmxnet3"

  validation {
    condition     = contains(["vmxnet3", "e1000e", "e1000"], var.library_nic_type)
    error_message = "The library_nic_type value must be \"vmxnet3\", \"e1000e\" or \"e1000\"."
  }
}

# --- Shape ---------------------------------------------------------------------------------------
# Terraform 1.0.3 runs validation on the raw string of a -var or TF_VAR_ value, so "2" == 2 is false
# there: number checks compare against tonumber(var.x).

variable "name_prefix" {
  description = "VMs are named <name_prefix>-1 .. <name_prefix>-<instances>; the guest hostname is the same."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,40}$", var.name_prefix))
    error_message = "The name_prefix must match ^[a-z0-9][a-z0-9-]{0,40}$ (lower-case letters, digits and '-', starting with a letter or digit, at most 41 characters)."
  }
}

variable "instances" {
  description = "Number of VMs."
  type        = number

  validation {
    condition     = var.instances >= 0 && floor(var.instances) == tonumber(var.instances)
    error_message = "The instances value must be a whole number >= 0."
  }
}

variable "cpu" {
  description = "vCPUs per VM."
  type        = number

  validation {
    condition     = var.cpu >= 1 && floor(var.cpu) == tonumber(var.cpu)
    error_message = "The cpu value must be a whole number >= 1."
  }
}

variable "memory_mb" {
  description = "Memory per VM in MB."
  type        = number

  validation {
    condition     = var.memory_mb >= 256 && floor(var.memory_mb) == tonumber(var.memory_mb)
    error_message = "The memory_mb value must be a whole number >= 256."
  }
}

variable "disk_gb" {
  description = "Size of the first disk in GB; must be at least the template's disk size (checked at plan time)."
  type        = number
  default     = 20

  validation {
    condition     = var.disk_gb >= 1 && floor(var.disk_gb) == tonumber(var.disk_gb)
    error_message = "The disk_gb value must be a whole number >= 1."
  }
}

# --- Guest customization -------------------------------------------------------------------------

variable "domain" {
  description = "DNS domain of the guests."
  type        = string
  default     = "local"
}

variable "ipv4_addresses" {
  description = "Static IPv4 address per VM, in count order. Empty means DHCP; otherwise exactly one per instance (checked at plan time)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for ip in var.ipv4_addresses : can(cidrhost("${ip}/32", 0))])
    error_message = "Every ipv4_addresses entry must be a plain IPv4 address such as 10.0.0.5 (no prefix length)."
  }
}

variable "ipv4_netmask" {
  description = "Prefix length for the static addresses."
  type        = number
  default     = 24

  validation {
    condition     = var.ipv4_netmask >= 1 && var.ipv4_netmask <= 32 && floor(var.ipv4_netmask) == tonumber(var.ipv4_netmask)
    error_message = "The ipv4_netmask value must be a prefix length between 1 and 32."
  }
}

variable "ipv4_gateway" {
  description = "Default gateway; empty for none (DHCP)."
  type        = string
  default     = ""

  validation {
    condition     = var.ipv4_gateway == "" || can(cidrhost("${var.ipv4_gateway}/32", 0))
    error_message = "The ipv4_gateway value must be empty or a plain IPv4 address."
  }
}

variable "dns_servers" {
  description = "DNS servers written by guest customization."
  type        = list(string)
  default     = []
}

variable "dns_suffixes" {
  description = "DNS search suffixes written by guest customization."
  type        = list(string)
  default     = []
}

variable "annotation" {
  description = "The VMs' notes in vCenter (free text, kept verbatim; several lines allowed)."
  type        = string
  default     = ""
}

# --- Placement and metadata ----------------------------------------------------------------------

variable "department" {
  description = "A department folder under folder (e.g. \"radiology\"; it must exist); \"\" puts the VMs in folder itself."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9 _.-]{0,62})?$", var.department))
    error_message = "The department value must be one folder name: letters, digits, space, '_', '.', '-', at most 63 characters, not starting with a space or dot."
  }
}

variable "folder_per_deployment" {
  description = "Put the VMs in a folder of their own, <folder>[/<department>]/<name_prefix>, made and removed with them."
  type        = bool
  default     = false
}

variable "resource_pool" {
  description = "A resource pool of the cluster or host, by name or path (e.g. \"DC0_C0/Resources/gold\"); \"\" is its root pool."
  type        = string
  default     = ""
}

variable "datastore_cluster" {
  description = "A datastore cluster (Storage DRS picks the datastore) instead of datastore; \"\" uses datastore."
  type        = string
  default     = ""
}

variable "storage_policy" {
  description = "A VM storage policy (SPBM) by name, for the VM's home and its disks; \"\" keeps the datastore's default."
  type        = string
  default     = ""
}

variable "custom_attributes" {
  description = "vCenter custom attribute values set on every VM, by attribute name (the attributes must exist)."
  type        = map(string)
  default     = {}
}

variable "anti_affinity" {
  description = "Keep the VMs on different hosts (a DRS anti-affinity rule); needs a cluster and two or more instances."
  type        = bool
  default     = false
}

variable "tags" {
  description = "vSphere tags on every VM, as \"Category/Name\"; umc_infra makes the categories and tags vCenter lacks before the plan."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for tag in var.tags : can(regex("^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,79}/[A-Za-z0-9][A-Za-z0-9 _.:-]{0,79}$", tag))])
    error_message = "Each tags entry must be Category/Name: letters, digits, space, '_', '.', ':', '-', at most 80 characters each, starting with a letter or digit."
  }
}

variable "tag_ids" {
  description = "vSphere tag ids attached to every VM (optional)."
  type        = list(string)
  default     = []
}

# --- Timeouts (the sandbox passes 0 for both) ----------------------------------------------------

variable "customize_timeout" {
  description = "Minutes to wait for guest customization to finish; 0 does not wait (the simulator never reports completion)."
  type        = number
  default     = 10

  validation {
    condition     = var.customize_timeout >= 0
    error_message = "The customize_timeout value must be >= 0."
  }
}

variable "wait_for_guest_net_timeout" {
  description = "Minutes to wait for a routable guest IP; 0 does not wait (the provider ignores loopback addresses, which the sandbox uses)."
  type        = number
  default     = 5

  validation {
    condition     = var.wait_for_guest_net_timeout >= 0
    error_message = "The wait_for_guest_net_timeout value must be >= 0."
  }
}

variable "data_disk_gb" {
  description = "Sizes in GB of data disks added after the first (unit numbers 1, 2, ...); none by default."
  type        = list(number)
  default     = []

  validation {
    condition     = length(var.data_disk_gb) <= 14 && alltrue([for s in var.data_disk_gb : s >= 1 && floor(s) == s])
    error_message = "The data_disk_gb value must hold at most 14 whole numbers >= 1 (GB)."
  }
}

variable "data_disk_datastore" {
  description = "The datastore of the data disks; empty: the VM's datastore."
  type        = string
  default     = ""
}

variable "extra_networks" {
  description = "Networks (port groups, distributed port groups included) of NICs after the first; DHCP on them."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.extra_networks) <= 9
    error_message = "The extra_networks value may name at most 9 networks."
  }
}

variable "cpu_hot_add" {
  description = "Whether vCPUs can be added while the VM runs."
  type        = bool
  default     = false
}

variable "memory_hot_add" {
  description = "Whether memory can be added while the VM runs."
  type        = bool
  default     = false
}

variable "cpu_reservation_mhz" {
  description = "CPU reserved for each VM, in MHz (0: none)."
  type        = number
  default     = 0

  validation {
    condition     = var.cpu_reservation_mhz >= 0 && floor(var.cpu_reservation_mhz) == var.cpu_reservation_mhz
    error_message = "The cpu_reservation_mhz value must be a whole number >= 0."
  }
}

variable "memory_reservation_mb" {
  description = "Memory reserved for each VM, in MB (0: none; at most memory_mb)."
  type        = number
  default     = 0

  validation {
    condition     = var.memory_reservation_mb >= 0 && floor(var.memory_reservation_mb) == var.memory_reservation_mb
    error_message = "The memory_reservation_mb value must be a whole number >= 0."
  }
}

# --- Windows guests (windows.tf) -----------------------------------------------------------------

variable "guest_os" {
  description = "The guest family of the template: \"linux\" (linux_options: host name and DNS domain) or \"windows\" (windows_options: sysprep). Checked against the template's guest id at plan time."
  type        = string
  default     = "linux"

  validation {
    condition     = contains(["linux", "windows"], var.guest_os)
    error_message = "The guest_os value must be \"linux\" or \"windows\"."
  }
}

variable "computer_name_prefix" {
  description = "Windows: computer names are <prefix>-1 .. <prefix>-<instances> (NetBIOS: at most 15 characters in all, no dots)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z][A-Za-z0-9-]{0,11})?$", var.computer_name_prefix))
    error_message = "The computer_name_prefix must be empty or match ^[A-Za-z][A-Za-z0-9-]{0,11}$ (a letter, then letters, digits and '-', at most 12 characters: the computer name adds -<n>)."
  }
}

variable "windows_admin_password" {
  description = "Windows: the local Administrator's password set by sysprep (from Vault). Pass it through TF_VAR_windows_admin_password."
  type        = string
  default     = ""
  sensitive   = true
}

variable "windows_domain" {
  description = "Windows: the Active Directory domain (FQDN) the VMs join; empty: they join windows_workgroup."
  type        = string
  default     = ""

  validation {
    condition     = var.windows_domain == "" || (length(var.windows_domain) <= 253 && can(regex("^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$", var.windows_domain)))
    error_message = "The windows_domain value must be empty or a DNS domain name such as ad.umcutrecht.nl (labels of letters, digits and '-', separated by dots)."
  }
}

variable "windows_workgroup" {
  description = "Windows: the workgroup when windows_domain is empty."
  type        = string
  default     = "WORKGROUP"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9-]{0,14}$", var.windows_workgroup))
    error_message = "The windows_workgroup value must match ^[A-Za-z0-9][A-Za-z0-9-]{0,14}$ (at most 15 letters, digits and '-')."
  }
}

variable "windows_join_user" {
  description = "Windows: the account that joins the VMs to windows_domain (from Vault; used only with a domain)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "windows_join_password" {
  description = "Windows: the join account's password (from Vault; used only with a domain)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "windows_time_zone" {
  description = "Windows: the time zone id (e.g. \"W. Europe Standard Time\"); windows.tf maps it to sysprep's index."
  type        = string
  default     = "W. Europe Standard Time"
}
