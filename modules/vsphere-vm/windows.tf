# Windows guests: which customization identity the clones get (linux_options or windows_options in main.tf),
# and the checks on the Windows inputs. A file of its own so main.tf keeps the placement and hardware.

locals {
  # vSphere's Windows guest ids all start with "win" (windows2019srv_64Guest, windows9Server64Guest ...); the
  # provider picks the customization family by the guest id and refuses options of the other family.
  template_windows = length(regexall("^win", lower(local.template_guest_id))) > 0
  # A library item's guest id (library_guest_id) by default: a Windows Server one for guest_os = windows.
  library_guest_id = var.library_guest_id != "" ? var.library_guest_id : (var.guest_os == "windows" ? "windows9Server64Guest" : "other3xLinux64Guest")

  # Sysprep's time zone is Microsoft's index, the playbook's (win_timezone) the zone's id: the module takes the
  # id and looks the index up. Add a zone here with its index from Microsoft's "Time Zone Index Values".
  windows_time_zones = {
    "W. Europe Standard Time"        = 110
    "Romance Standard Time"          = 105
    "Central Europe Standard Time"   = 95
    "Central European Standard Time" = 100
    "E. Europe Standard Time"        = 115
    "GMT Standard Time"              = 85
    "Greenwich Standard Time"        = 90
  }

  join_domain = var.windows_domain != ""
  # Only whether the credential is there leaves the sensitive values, never the values.
  join_credential_given = local.join_domain ? nonsensitive(var.windows_join_user != "" && var.windows_join_password != "") : true

  windows_errors = var.guest_os != "windows" ? compact([
    local.template_windows ? "The template ${var.template} has the Windows guest id ${local.template_guest_id}: set guest_os = \"windows\" and computer_name_prefix, or use a Linux template." : "",
    ]) : compact([
    !local.template_windows ? "guest_os is \"windows\" but the template ${var.template} has the guest id ${local.template_guest_id}, not a Windows one: name a Windows template." : "",
    var.computer_name_prefix == "" ? "guest_os is \"windows\": set computer_name_prefix (Windows computer names are at most 15 characters, VM names are longer)." : "",
    length(var.computer_name_prefix) + 1 + length(tostring(var.instances)) > 15 ? "computer_name_prefix ${jsonencode(var.computer_name_prefix)} with ${var.instances} instances makes computer names of ${length(var.computer_name_prefix) + 1 + length(tostring(var.instances))} characters (<prefix>-<n>); Windows allows 15." : "",
    lookup(local.windows_time_zones, var.windows_time_zone, null) == null ? "windows_time_zone ${jsonencode(var.windows_time_zone)} is not one of ${join(", ", keys(local.windows_time_zones))}." : "",
    !local.join_credential_given ? "windows_domain is set but the join credential (windows_join_user, windows_join_password) is empty." : "",
  ])
  # A non-empty list stops the plan (tobool cannot convert the message; Terraform prints it verbatim).
  windows                 = length(local.windows_errors) == 0 ? var.guest_os == "windows" : tobool("ERROR: ${join(" ", local.windows_errors)}")
  windows_time_zone_index = lookup(local.windows_time_zones, var.windows_time_zone, 85)
}
